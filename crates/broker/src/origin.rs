//! The TLS origin: a plaintext port on the broker's loopback address whose
//! every connection is carried over TLS to a broker's TLS listener (what
//! stunnel's client mode does). The runner's side of a TLS-only broker:
//!
//! ```text
//! fault proxy, cloud clients, probes --plain--> origin ==TLS==> broker:8883
//! ```
//!
//! Why one origin rather than TLS in every client: the proxy's pumps, the
//! synchronous cloud client and the semantic probes all speak plain TCP,
//! and the wire tap must see plaintext; one hop on loopback gives all of
//! them the broker's TLS listener, with its certificate verified against
//! the CA the runner was given (and its name), and a client certificate
//! when the broker asks for one.
//!
//! A connection the origin cannot carry (broker down, handshake refused) is
//! reset, so its client sees what it would see of a dead broker; the reason
//! is kept ([`TlsOrigin::last_error`]) for the error a user is shown.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// TLS to a broker's listener, as its clients' side of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The CA (PEM) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the broker's certificate must be for.
    pub server_name: String,
    /// A client certificate chain and its key (PEM files), for a broker
    /// that requires one. Paths only: the key never is in a Debug output.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Why the origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("TLS to the broker: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to the broker: {path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("TLS to the broker: `{0}` is not a DNS name or IP address to verify its certificate against")]
    BadName(String),
    #[error("TLS to the broker: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS to the broker: cannot start the origin on {ip}: {source}")]
    Listen {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, OriginError> {
    std::fs::read(path).map_err(|source| OriginError::Read {
        path: path.into(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, OriginError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| OriginError::Read {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(OriginError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, OriginError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| OriginError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| OriginError::Empty {
            path: path.into(),
            what: "private key",
        })
}

impl UpstreamTls {
    /// The client config: the CA as the only root, TLS 1.2 and 1.3.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, OriginError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca_file)? {
            roots.add(c)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let cfg = match &self.client {
            Some((chain, k)) => builder.with_client_auth_cert(certs(chain)?, key(k)?)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(cfg))
    }

    fn name(&self) -> Result<ServerName<'static>, OriginError> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|_| OriginError::BadName(self.server_name.clone()))
    }
}

pub struct TlsOrigin {
    addr: SocketAddr,
    last_error: Arc<Mutex<Option<String>>>,
    rt: Option<tokio::runtime::Runtime>,
}

/// How long the broker has to finish a handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

impl TlsOrigin {
    /// Listens on a free port of `ip`; each connection goes to `broker`
    /// over TLS as `tls` says.
    pub fn start(
        ip: IpAddr,
        broker: SocketAddr,
        tls: &UpstreamTls,
    ) -> Result<TlsOrigin, OriginError> {
        let cfg = tls.client_config()?;
        let name = tls.name()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hil-tls-origin")
            .enable_all()
            .build()
            .map_err(|source| OriginError::Listen { ip, source })?;
        let listener = rt
            .block_on(TcpListener::bind(SocketAddr::new(ip, 0)))
            .map_err(|source| OriginError::Listen { ip, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| OriginError::Listen { ip, source })?;
        let last_error = Arc::new(Mutex::new(None));
        let errors = last_error.clone();
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                tokio::spawn(carry(
                    client,
                    broker,
                    connector,
                    name.clone(),
                    errors.clone(),
                ));
            }
        });
        Ok(TlsOrigin {
            addr,
            last_error,
            rt: Some(rt),
        })
    }

    /// Where plaintext clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Why the last connection could not be carried, if one could not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// SO_LINGER 0: the close that follows is a reset (the TLS hop uses it too).
pub fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn carry(
    mut client: TcpStream,
    broker: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    errors: Arc<Mutex<Option<String>>>,
) {
    let _ = client.set_nodelay(true);
    let fail = |why: String| {
        *errors.lock().unwrap() = Some(why);
        reset_on_close(&client);
    };
    let up = match TcpStream::connect(broker).await {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot reach {broker}: {e}")),
    };
    let _ = up.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HANDSHAKE, connector.connect(name, up)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(format!("handshake with {broker}: {e}")),
        Err(_) => return fail(format!("handshake with {broker}: not finished within 10 s")),
    };
    // In TLS 1.3 a broker checks the client's certificate after the
    // client's side of the handshake is done: its refusal arrives here, as
    // an alert on the first read.
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut tls).await {
        *errors.lock().unwrap() = Some(format!("connection to {broker} ended: {e}"));
        reset_on_close(&client);
        reset_on_close(tls.get_ref().0);
    }
}
