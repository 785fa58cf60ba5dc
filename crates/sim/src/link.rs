//! The TCP link to the broker, with a generation number per connection so a
//! late message from a connection already closed is never taken for the
//! current one.

use crate::Msg;
use hil_session::LinkDownReason;
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::time::Duration;

pub(crate) enum LinkMsg {
    Up(u64, TcpStream),
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
    wifi: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    pub fn new(broker: SocketAddr, tx: Sender<Msg>) -> Self {
        Link {
            broker,
            tx,
            generation: 0,
            stream: None,
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
        let addr = self.broker;
        std::thread::spawn(
            move || match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    let _ = tx.send(Msg::Link(LinkMsg::Up(generation, s)));
                }
                Err(e) => {
                    let _ = tx.send(Msg::Link(LinkMsg::Down(
                        generation,
                        LinkDownReason::Refused(format!("{addr}: {e}")),
                    )));
                }
            },
        );
    }

    /// Filters out messages of older connections.
    pub fn accept(&mut self, m: LinkMsg) -> Option<Accepted> {
        match m {
            LinkMsg::Up(g, s) if g == self.generation && self.wifi => {
                let reader = match s.try_clone() {
                    Ok(r) => r,
                    Err(e) => return Some(Accepted::Down(LinkDownReason::Error(e.to_string()))),
                };
                self.stream = Some(s);
                spawn_reader(reader, g, self.tx.clone());
                Some(Accepted::Up)
            }
            LinkMsg::Up(_, s) => {
                abort(&s);
                None
            }
            LinkMsg::Bytes(g, b) if g == self.generation && self.stream.is_some() => {
                Some(Accepted::Bytes(b))
            }
            LinkMsg::Down(g, r) if g == self.generation => {
                self.stream = None;
                Some(Accepted::Down(r))
            }
            _ => None,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), LinkDownReason> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        s.write_all(bytes).map_err(|e| {
            self.close(true);
            LinkDownReason::Error(e.to_string())
        })
    }

    /// `abrupt`: RST, as when the radio dies; otherwise an orderly FIN.
    pub fn close(&mut self, abrupt: bool) {
        // Messages of the closed connection are ignored from now on.
        self.generation += 1;
        if let Some(s) = self.stream.take() {
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

fn spawn_reader(mut s: TcpStream, generation: u64, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Msg::Link(LinkMsg::Down(generation, LinkDownReason::Closed)));
                    return;
                }
                Ok(n) => {
                    if tx
                        .send(Msg::Link(LinkMsg::Bytes(generation, buf[..n].to_vec())))
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
