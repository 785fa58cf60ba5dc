//! MQTT over TLS on the device (feature `tls`): embedded-tls, a no_std
//! TLS 1.3 client, over the embassy-net TCP socket.
//!
//! Why embedded-tls and not esp-mbedtls: it is pure Rust on the same
//! embedded-io-async traits as embassy-net, needs no C toolchain or
//! prebuilt libraries for the RISC-V target, builds on stable with the rest
//! of the firmware, and verifies the server with its `rustpki` feature:
//! the chain up to the provisioned CA (ECDSA P-256/P-384 and RSA
//! signatures) and the host name against the certificate's names.
//!
//! What it does not do, and the device therefore does not claim:
//! - TLS 1.2: a broker that only offers 1.2 is refused (the handshake fails);
//! - validity dates: the chip has no wall clock at boot (no SNTP here), so
//!   an expired certificate is not detected (`tls_expired` cannot pass on
//!   this firmware, and is not hidden: it fails);
//! - basic constraints and key usage of intermediates.
//!
//! Mutual TLS: a client certificate (DER) and its P-256 key (PKCS#8 DER),
//! provisioned by `!config tls.cert=... tls.key=...` (base64), are
//! presented when the broker asks for one.
//!
//! The one connection alive at a time owns the record buffers: a
//! connection borrows its buffers for as long as it lives, and it lives
//! across iterations of the main loop, which the borrow checker cannot see
//! end before the next one begins (see [`TlsLink::open`]).

use crate::link::Sock;
use embedded_io_async::Write;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, NoClock, SignatureScheme, TlsConfig,
    TlsConnection, TlsContext, TlsError, TlsVerifier,
};

/// A TLS record's largest size (16 KiB of data plus its overhead): what
/// the broker may send in one record, so what must fit in the read buffer.
const RECORD_RX: usize = 16_640;
/// Writes are cut into records of this size.
const RECORD_TX: usize = 4096;
/// Room for the broker's whole certificate chain, kept for the signature
/// check: a chain of three with a large leaf is ~5.3 KB.
const CHAIN: usize = 8192;

struct Records {
    rx: [u8; RECORD_RX],
    tx: [u8; RECORD_TX],
}

static mut RECORDS: Records = Records {
    rx: [0; RECORD_RX],
    tx: [0; RECORD_TX],
};

type Conn = TlsConnection<'static, Sock, Aes128GcmSha256>;

/// The provisioned CA and name, the chip's random source, and the chain
/// check: what a handshake needs.
struct Provider<'a, R> {
    rng: &'a mut R,
    verifier: CertVerifier<'a, Aes128GcmSha256, NoClock, CHAIN>,
    client: Option<Identity<'a>>,
}

/// A client certificate (DER) and its P-256 key (PKCS#8 DER).
#[derive(Clone, Copy)]
pub struct Identity<'a> {
    pub cert: &'a [u8],
    pub key: &'a [u8],
}

impl<R: embedded_tls::CryptoRngCore> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<(impl signature::SignerMut<Self::Signature>, SignatureScheme), TlsError> {
        use p256::pkcs8::DecodePrivateKey;
        let key = self.client.ok_or(TlsError::InvalidPrivateKey)?.key;
        let key = p256::SecretKey::from_pkcs8_der(key).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok((
            p256::ecdsa::SigningKey::from(&key),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client.map(|c| Certificate::X509(c.cert))
    }
}

/// The TLS session over the device's one TCP socket, when there is one.
pub struct TlsLink {
    conn: Option<Conn>,
}

impl TlsLink {
    pub const fn new() -> TlsLink {
        TlsLink { conn: None }
    }

    /// Handshakes over `socket` (connected): TLS 1.3, the chain checked up
    /// to `ca` (DER) and the certificate's names against `name`; `client`
    /// is presented if the broker asks for a certificate.
    pub async fn open(
        &mut self,
        socket: Sock,
        ca: &[u8],
        name: &str,
        client: Option<Identity<'_>>,
        rng: &mut impl embedded_tls::CryptoRngCore,
    ) -> Result<(), TlsError> {
        // The previous connection, the buffers' only holder, is gone first.
        self.conn = None;
        // SAFETY: RECORDS is only ever borrowed here, by the one connection
        // that `self.conn` holds; the line above dropped the previous one,
        // so these are the only live references to it.
        let records = unsafe { &mut *core::ptr::addr_of_mut!(RECORDS) };
        let mut conn = TlsConnection::new(socket, &mut records.rx, &mut records.tx);
        let config = TlsConfig::new().with_server_name(name);
        let provider = Provider {
            rng,
            verifier: CertVerifier::new(Certificate::X509(ca)),
            client,
        };
        conn.open(TlsContext::new(&config, provider)).await?;
        self.conn = Some(conn);
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
        let conn = self.conn.as_mut().ok_or(TlsError::ConnectionClosed)?;
        conn.write_all(bytes).await?;
        conn.flush().await
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        match self.conn.as_mut() {
            Some(conn) => conn.read(buf).await,
            None => core::future::pending().await,
        }
    }

    /// Ends the session: with close_notify (`clean`), or by dropping it
    /// (the caller then resets the TCP connection).
    pub async fn close(&mut self, clean: bool) {
        if let Some(conn) = self.conn.take() {
            if clean {
                let _ = conn.close().await;
            }
        }
    }
}
