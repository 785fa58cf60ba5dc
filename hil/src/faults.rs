//! A TCP fault proxy between the device and the broker: cut (RST), blackhole
//! (sockets stay open, bytes dropped both ways, so only keep-alive can
//! notice), refuse new connections. Unlike Toxiproxy it never accepts a
//! device while the broker is unreachable: the device sees a reset at once,
//! as it would from a broker that is down.

use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    blackhole: bool,
    refuse: bool,
    /// (device side, broker side) of every live connection.
    conns: Vec<(TcpStream, TcpStream)>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

impl FaultProxy {
    /// Listens on a free port of `ip` and forwards to `upstream`.
    pub fn start(ip: std::net::IpAddr, upstream: SocketAddr) -> Result<FaultProxy, String> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("fault proxy: cannot listen on {ip}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for dev in listener.incoming() {
                let Ok(dev) = dev else { continue };
                if st.lock().unwrap().refuse {
                    reset(&dev);
                    continue;
                }
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    reset(&dev);
                    continue;
                };
                let _ = dev.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (Ok(d2), Ok(u2)) = (dev.try_clone(), up.try_clone()) else {
                    continue;
                };
                st.lock().unwrap().conns.push((d2, u2));
                pump(
                    dev.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    st.clone(),
                );
                pump(up, dev, st.clone());
            }
        });
        Ok(FaultProxy { addr, state })
    }

    /// Where the device connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every live connection, both sides.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        for (d, u) in st.conns.drain(..) {
            reset(&d);
            reset(&u);
        }
    }

    /// Drops all bytes both ways while on; connections stay open.
    pub fn blackhole(&self, on: bool) {
        let mut st = self.state.lock().unwrap();
        st.blackhole = on;
        if !on {
            // Connections that lived through the blackhole are dead to both
            // ends by now; new ones pass.
            for (d, u) in st.conns.drain(..) {
                reset(&d);
                reset(&u);
            }
        }
    }

    pub fn refuse(&self, on: bool) {
        self.state.lock().unwrap().refuse = on;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<Mutex<State>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // In a blackhole the far end hears nothing, not even the close.
                    if !st.lock().unwrap().blackhole {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    if st.lock().unwrap().blackhole {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
