//! The firmware's TLS stack on the host: embedded-tls as the firmware's
//! `tls` feature builds it (TLS 1.3, the rustpki verifier, no clock: the
//! chip has no wall clock at boot), against each server certificate of
//! the test PKI, served by rustls as the TLS hop serves it.
//!
//! The firmware itself cannot run here (no board, no ESP32-C3 emulator);
//! this pins what its TLS layer accepts and refuses, so a scenario verdict
//! on a TLS board can be predicted: the good and the large chains are
//! accepted, an unknown CA and a wrong name are refused, and an expired
//! certificate is accepted (the known limitation the firmware's tls.rs
//! states: without a clock, dates cannot be checked).

use embedded_io_adapters::std::FromStd;
use embedded_tls::blocking::TlsConnection;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, NoClock, SignatureScheme, TlsConfig, TlsContext,
    TlsError, TlsVerifier,
};
use hil::testbed::pki::{ServerCert, TestPki, SERVER_NAME};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// The firmware's provider (firmware/src/tls.rs): its random source, the
/// CA, no clock (a chain of up to 8 KiB, as the firmware keeps), and a
/// client certificate with its P-256 key (PKCS#8 DER), if provisioned.
struct Provider<'a> {
    rng: rand_core::OsRng,
    verifier: CertVerifier<'a, Aes128GcmSha256, NoClock, 8192>,
    client: Option<(&'a [u8], &'a [u8])>,
}

impl CryptoProvider for Provider<'_> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<(impl signature::SignerMut<Self::Signature>, SignatureScheme), TlsError> {
        use p256::pkcs8::DecodePrivateKey;
        let key = self.client.ok_or(TlsError::InvalidPrivateKey)?.1;
        let key = p256::SecretKey::from_pkcs8_der(key).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok((
            p256::ecdsa::SigningKey::from(&key),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client.map(|c| Certificate::X509(c.0))
    }
}

/// One handshake of the firmware's stack against `cert`; after it, one
/// byte each way proves the session works.
fn handshake(
    pki: &TestPki,
    cert: ServerCert,
    require_client_cert: bool,
    client: Option<(&[u8], &[u8])>,
) -> Result<(), TlsError> {
    let cfg: Arc<rustls::ServerConfig> = pki.server_config(cert, require_client_cert).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(cfg).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut b = [0u8; 1];
        if tls.read_exact(&mut b).is_ok() {
            let _ = tls.write_all(&b);
            let _ = tls.flush();
        }
    });
    let pem = std::fs::read(&pki.ca_file).unwrap();
    let ca = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut rx = vec![0u8; 16_640];
    let mut tx = vec![0u8; 4096];
    let mut conn: TlsConnection<'_, FromStd<TcpStream>, Aes128GcmSha256> =
        TlsConnection::new(FromStd::new(tcp), &mut rx, &mut tx);
    let config = TlsConfig::new().with_server_name(SERVER_NAME);
    let provider = Provider {
        rng: rand_core::OsRng,
        verifier: CertVerifier::new(Certificate::X509(ca.as_ref())),
        client,
    };
    // In TLS 1.3 the server checks a client certificate after the client's
    // side of the handshake is done: its refusal arrives on the first read.
    let mut opened = conn.open(TlsContext::new(&config, provider));
    if opened.is_ok() {
        let mut b = [0u8; 1];
        opened = conn
            .write(b"!")
            .and_then(|_| conn.flush())
            .and_then(|_| conn.read(&mut b))
            .and_then(|n| {
                if n == 1 && &b == b"!" {
                    Ok(())
                } else {
                    Err(TlsError::ConnectionClosed)
                }
            });
    }
    drop(conn);
    let _ = server.join();
    opened
}

#[test]
fn the_firmware_tls_stack_accepts_and_refuses_what_its_verifier_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
    for (cert, accepted) in [
        (ServerCert::Good, true),
        (ServerCert::LargeChain, true),
        (ServerCert::UnknownCa, false),
        (ServerCert::WrongName, false),
        // No clock on the chip: dates are not checked (the known limit).
        (ServerCert::Expired, true),
    ] {
        let r = handshake(&pki, cert, false, None);
        assert_eq!(r.is_ok(), accepted, "{cert:?}: {r:?}");
    }
}

#[test]
fn the_firmware_tls_stack_presents_its_client_certificate_when_one_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
    let (files, cert) = pki.client_files("device", "esp32c3-240ac4000001").unwrap();
    let pem = std::fs::read(&files.key_file).unwrap();
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .unwrap();
    let key = key.secret_der().to_vec();
    let with = handshake(&pki, ServerCert::Good, true, Some((&cert, &key)));
    assert!(with.is_ok(), "{with:?}");
    let without = handshake(&pki, ServerCert::Good, true, None);
    assert!(
        without.is_err(),
        "a server that requires one refuses: {without:?}"
    );
}
