//! The TCP link to the broker, with a generation number per connection so a
//! late message from a connection already closed is never taken for the
//! current one; TLS over it when the device was provisioned with a CA.
//!
//! With TLS the handshake is finished before the link is reported up, so a
//! certificate the device refuses is a refused connection (its reason on the
//! console), never an MQTT session. The reader thread reads raw bytes
//! without holding the TLS state, then takes it to decrypt; a send takes it
//! to encrypt: one lock, never held across a blocking read.

use crate::tls::TlsSettings;
use crate::Msg;
use hil_session::LinkDownReason;
use rustls::ClientConnection;
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Tls = Arc<Mutex<ClientConnection>>;

/// What the device may connect with.
#[derive(Clone)]
pub(crate) enum Security {
    Plain,
    Tls {
        settings: TlsSettings,
        /// The `plaintext-fallback` control: after a failed handshake the
        /// next attempt goes without TLS.
        plaintext_fallback: bool,
    },
    /// A production device without a CA: it refuses to connect at all.
    Refuse(String),
}

pub(crate) enum LinkMsg {
    Up(u64, TcpStream, Option<Box<ClientConnection>>),
    /// The TLS handshake failed: why.
    TlsRefused(u64, String),
    Bytes(u64, Vec<u8>),
    Down(u64, LinkDownReason),
}

pub(crate) enum Accepted {
    Up,
    Bytes(Vec<u8>),
    Down(LinkDownReason),
}

pub(crate) struct Link {
    broker: SocketAddr,
    tx: Sender<Msg>,
    generation: u64,
    stream: Option<TcpStream>,
    tls: Option<Tls>,
    security: Security,
    /// The last handshake failed (the `plaintext-fallback` control reads it).
    tls_failed: bool,
    wifi: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    pub fn new(broker: SocketAddr, security: Security, tx: Sender<Msg>) -> Self {
        Link {
            broker,
            tx,
            generation: 0,
            stream: None,
            tls: None,
            security,
            tls_failed: false,
            wifi: false,
        }
    }

    /// Where the next connection goes.
    pub fn set_broker(&mut self, broker: SocketAddr) {
        self.broker = broker;
    }

    pub fn set_wifi(&mut self, on: bool) {
        self.wifi = on;
        if !on {
            self.close(true);
        }
    }

    /// Connects in the background; the answer comes as a `LinkMsg`.
    pub fn open(&mut self) {
        self.close(true);
        self.generation += 1;
        let generation = self.generation;
        let tx = self.tx.clone();
        if !self.wifi {
            let _ = tx.send(Msg::Link(LinkMsg::Down(
                generation,
                LinkDownReason::Refused("wifi is off".into()),
            )));
            return;
        }
        if let Security::Refuse(why) = &self.security {
            let _ = tx.send(Msg::Link(LinkMsg::Down(
                generation,
                LinkDownReason::Refused(why.clone()),
            )));
            return;
        }
        let addr = self.broker;
        let fall_back = std::mem::take(&mut self.tls_failed);
        let tls = match &self.security {
            Security::Tls {
                plaintext_fallback: true,
                ..
            } if fall_back => None,
            Security::Tls { settings, .. } => Some(settings.clone()),
            _ => None,
        };
        std::thread::spawn(move || {
            let refused = |why: String| {
                let _ = tx.send(Msg::Link(LinkMsg::Down(
                    generation,
                    LinkDownReason::Refused(why),
                )));
            };
            let mut s = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => s,
                Err(e) => return refused(format!("{addr}: {e}")),
            };
            let _ = s.set_nodelay(true);
            let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
            let conn = match tls {
                None => None,
                Some(t) => match handshake(&mut s, &t) {
                    Ok(c) => Some(Box::new(c)),
                    Err(why) => {
                        abort(&s);
                        let _ = tx.send(Msg::Link(LinkMsg::TlsRefused(generation, why)));
                        return;
                    }
                },
            };
            let _ = tx.send(Msg::Link(LinkMsg::Up(generation, s, conn)));
        });
    }

    /// Filters out messages of older connections.
    pub fn accept(&mut self, m: LinkMsg) -> Option<Accepted> {
        match m {
            LinkMsg::Up(g, s, conn) if g == self.generation && self.wifi => {
                let reader = match s.try_clone() {
                    Ok(r) => r,
                    Err(e) => return Some(Accepted::Down(LinkDownReason::Error(e.to_string()))),
                };
                let tls = conn.map(|c| Arc::new(Mutex::new(*c)));
                self.stream = Some(s);
                self.tls = tls.clone();
                spawn_reader(reader, tls, g, self.tx.clone());
                Some(Accepted::Up)
            }
            LinkMsg::Up(_, s, _) => {
                abort(&s);
                None
            }
            LinkMsg::Bytes(g, b) if g == self.generation && self.stream.is_some() => {
                Some(Accepted::Bytes(b))
            }
            LinkMsg::TlsRefused(g, why) if g == self.generation => {
                self.stream = None;
                self.tls = None;
                self.tls_failed = true;
                Some(Accepted::Down(LinkDownReason::Refused(format!(
                    "tls: {why}"
                ))))
            }
            LinkMsg::Down(g, r) if g == self.generation => {
                self.stream = None;
                self.tls = None;
                Some(Accepted::Down(r))
            }
            _ => None,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), LinkDownReason> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let sent = match &self.tls {
            None => s.write_all(bytes),
            Some(tls) => {
                let mut c = tls.lock().unwrap_or_else(|p| p.into_inner());
                c.writer().write_all(bytes).and_then(|()| flush(&mut c, s))
            }
        };
        sent.map_err(|e| {
            self.close(true);
            LinkDownReason::Error(e.to_string())
        })
    }

    /// `abrupt`: RST, as when the radio dies; otherwise an orderly FIN.
    pub fn close(&mut self, abrupt: bool) {
        // Messages of the closed connection are ignored from now on.
        self.generation += 1;
        let tls = self.tls.take();
        if let Some(s) = self.stream.take() {
            if let (Some(tls), false) = (tls, abrupt) {
                // An orderly close says so inside TLS too (close_notify).
                let mut c = tls.lock().unwrap_or_else(|p| p.into_inner());
                c.send_close_notify();
                let mut w = &s;
                let _ = flush(&mut c, &mut w);
            }
            if abrupt {
                abort(&s);
            } else {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// SO_LINGER 0 then close: the kernel sends RST instead of FIN. Shutting
/// down the read side wakes the reader thread so its clone closes too.
fn abort(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Read);
}

/// Writes what TLS has to send.
fn flush(c: &mut ClientConnection, s: &mut impl Write) -> std::io::Result<()> {
    while c.wants_write() {
        c.write_tls(s)?;
    }
    Ok(())
}

/// How long the broker has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake on a fresh connection; why it failed, in words.
fn handshake(s: &mut TcpStream, t: &TlsSettings) -> Result<ClientConnection, String> {
    let mut c =
        ClientConnection::new(t.config.clone(), t.name.clone()).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    while c.is_handshaking() {
        c.complete_io(s).map_err(|e| e.to_string())?;
    }
    let _ = s.set_read_timeout(None);
    Ok(c)
}

/// Decrypts what arrived: the plaintext, or why the session is broken.
fn decrypt(tls: &Tls, mut raw: &[u8], out: &mut impl Write) -> Result<Vec<u8>, String> {
    let mut c = tls.lock().unwrap_or_else(|p| p.into_inner());
    let mut plain = Vec::new();
    while !raw.is_empty() {
        c.read_tls(&mut raw).map_err(|e| e.to_string())?;
        let state = c.process_new_packets().map_err(|e| e.to_string())?;
        let n = state.plaintext_bytes_to_read();
        let start = plain.len();
        plain.resize(start + n, 0);
        c.reader()
            .read_exact(&mut plain[start..])
            .map_err(|e| e.to_string())?;
    }
    flush(&mut c, out).map_err(|e| e.to_string())?;
    Ok(plain)
}

fn spawn_reader(mut s: TcpStream, tls: Option<Tls>, generation: u64, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Msg::Link(LinkMsg::Down(generation, LinkDownReason::Closed)));
                    return;
                }
                Ok(n) => {
                    let bytes = match &tls {
                        None => buf[..n].to_vec(),
                        Some(tls) => {
                            let mut w = &s;
                            match decrypt(tls, &buf[..n], &mut w) {
                                Ok(b) => b,
                                Err(why) => {
                                    let _ = tx.send(Msg::Link(LinkMsg::Down(
                                        generation,
                                        LinkDownReason::Error(format!("tls: {why}")),
                                    )));
                                    return;
                                }
                            }
                        }
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    if tx
                        .send(Msg::Link(LinkMsg::Bytes(generation, bytes)))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Msg::Link(LinkMsg::Down(
                        generation,
                        LinkDownReason::Error(e.to_string()),
                    )));
                    return;
                }
            }
        }
    });
}
