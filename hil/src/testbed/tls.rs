//! The TLS hop: where a TLS device connects. It terminates the device's TLS
//! with a certificate of the run's test PKI and forwards the plaintext to
//! the fault proxy, so the wire tap still decodes every packet and every
//! link fault and packet rule still works:
//!
//! ```text
//! device ==TLS==> TLS hop --plain--> fault proxy (tap, faults) --> broker
//! ```
//!
//! The hop is also evidence: every handshake's outcome is a wire record
//! ([`WireEvent::Tls`]). A device that refuses a bad certificate aborts the
//! handshake (the hop sees its alert) and never sends CONNECT; one that
//! accepts it completes the handshake, and its CONNECT reaches the tap. A
//! device that falls back to plaintext opens a connection whose first byte
//! is not a TLS record: the hop records it and closes it.
//!
//! When the proxy resets the forwarded connection (broker down, a cut), the
//! hop resets the device's: what a TLS-terminating load balancer in front
//! of a dead broker does.
//!
//! Why a hop of its own rather than TLS inside the proxy: the proxy's pumps
//! are one thread per direction on a blocking socket, and a TLS session
//! cannot be split across two threads; tokio-rustls's stream can be driven
//! both ways from one task.

use super::pki::{PkiError, ServerCert, TestPki};
use super::wire::{ClientCertSeen, TlsOutcome, WireEvent, WireLog};
use hil_broker::origin::reset_on_close;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The hop could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsHopError {
    #[error("TLS hop: cannot start its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("TLS hop: cannot listen on {ip}: {source}")]
    Listen {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

pub struct TlsHop {
    addr: SocketAddr,
    presented: Arc<Mutex<ServerCert>>,
    pub pki: TestPki,
    rt: Option<tokio::runtime::Runtime>,
    /// Where the CA file lives (removed with the hop).
    _dir: tempfile::TempDir,
}

impl TlsHop {
    /// Listens on a free port of `ip`, forwarding to the proxy at `proxy`;
    /// presents [`ServerCert::Good`] until told otherwise. With
    /// `client_cert` (the certificate issued to the device, and its common
    /// name), a client certificate is required (mutual TLS), and each
    /// handshake records whether it was that one.
    pub fn start(
        ip: IpAddr,
        proxy: SocketAddr,
        pki: TestPki,
        dir: tempfile::TempDir,
        log: WireLog,
        client_cert: Option<(Vec<u8>, String)>,
    ) -> Result<TlsHop, TlsHopError> {
        let mut configs = HashMap::new();
        for c in ServerCert::ALL {
            configs.insert(c, pki.server_config(c, client_cert.is_some())?);
        }
        let issued = Arc::new(client_cert);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hil-tls-hop")
            .enable_all()
            .build()
            .map_err(TlsHopError::Runtime)?;
        let listener = rt
            .block_on(TcpListener::bind(SocketAddr::new(ip, 0)))
            .map_err(|source| TlsHopError::Listen { ip, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TlsHopError::Listen { ip, source })?;
        let presented = Arc::new(Mutex::new(ServerCert::Good));
        let which = presented.clone();
        rt.spawn(async move {
            loop {
                let Ok((dev, _)) = listener.accept().await else {
                    continue;
                };
                let cert = *which.lock().unwrap();
                let cfg = configs[&cert].clone();
                tokio::spawn(serve(dev, proxy, cfg, cert, log.clone(), issued.clone()));
            }
        });
        Ok(TlsHop {
            addr,
            presented,
            pki,
            rt: Some(rt),
            _dir: dir,
        })
    }

    /// Where the device connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate the next connections are presented.
    pub fn present(&self, cert: ServerCert) {
        *self.presented.lock().unwrap() = cert;
    }
}

impl Drop for TlsHop {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How long a device has to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

async fn serve(
    dev: TcpStream,
    proxy: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    cert: ServerCert,
    log: WireLog,
    issued: Arc<Option<(Vec<u8>, String)>>,
) {
    let _ = dev.set_nodelay(true);
    let mut first = [0u8; 1];
    // A TLS connection opens with a handshake record (content type 22).
    match tokio::time::timeout(HANDSHAKE, dev.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            log.push(WireEvent::Tls {
                presented: cert,
                outcome: TlsOutcome::Plaintext,
            });
            reset_on_close(&dev);
            return;
        }
        _ => {
            log.push(WireEvent::Tls {
                presented: cert,
                outcome: TlsOutcome::Refused("closed before its ClientHello".into()),
            });
            return;
        }
    }
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(dev);
    let mut tls = match tokio::time::timeout(HANDSHAKE, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            log.push(WireEvent::Tls {
                presented: cert,
                outcome: TlsOutcome::Refused(e.to_string()),
            });
            return;
        }
        Err(_) => {
            log.push(WireEvent::Tls {
                presented: cert,
                outcome: TlsOutcome::Refused("handshake not finished within 10 s".into()),
            });
            return;
        }
    };
    let version = tls
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let client = match (tls.get_ref().1.peer_certificates(), issued.as_ref()) {
        (None, _) => ClientCertSeen::None,
        (Some(chain), Some((der, cn))) if chain.first().map(|c| c.as_ref()) == Some(der) => {
            ClientCertSeen::Issued(cn.clone())
        }
        (Some(_), _) => ClientCertSeen::Other,
    };
    log.push(WireEvent::Tls {
        presented: cert,
        outcome: TlsOutcome::Established { version, client },
    });
    let Ok(mut up) = TcpStream::connect(proxy).await else {
        reset_on_close(tls.get_ref().0);
        return;
    };
    let _ = up.set_nodelay(true);
    if tokio::io::copy_bidirectional(&mut tls, &mut up)
        .await
        .is_err()
    {
        // One side reset: so does the other.
        reset_on_close(tls.get_ref().0);
        reset_on_close(&up);
    }
}
