//! A TCP fault proxy between the device and the broker, and the MQTT wire
//! tap. Link faults: cut (RST), blackhole (sockets stay open, bytes dropped
//! both ways, so only keep-alive can notice), refuse new connections,
//! latency. Packet faults: [`Rule`]s, installed with a guard. Unlike
//! Toxiproxy it never accepts a device while the broker is unreachable: the
//! device sees a reset at once, as it would from a broker that is down.
//!
//! Forwarding is packet by packet (the tap frames every byte into exactly one
//! packet), so a rule can drop, delay or replace one packet.

use super::rules::{Action, Rule};
use super::wire::{Dir, WireEvent, WireLog};
use crate::transcript::Transcript;
use hil_packets::tap::Decoder;
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The proxy could not listen.
#[derive(Debug, thiserror::Error)]
#[error("fault proxy: cannot listen on {ip}: {source}")]
pub struct ProxyError {
    pub ip: IpAddr,
    #[source]
    pub source: std::io::Error,
}

#[derive(Default)]
struct State {
    blackhole: bool,
    refuse: bool,
    latency: Duration,
    next_conn: u32,
    /// (connection number, device side, broker side) of every live connection.
    conns: Vec<(u32, TcpStream, TcpStream)>,
    /// Installed rules, by id; consulted in installation order.
    rules: Vec<(u64, Box<dyn Rule>)>,
    next_rule: u64,
    /// Connections a rule has held, not yet cut.
    held: Vec<u32>,
    /// Every connection ever held (what is held stays held until cut).
    ever_held: Vec<(u32, Dir)>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Signalled when a rule holds a connection.
    holds: Arc<Condvar>,
    log: WireLog,
}

/// Removes its rule from the proxy when dropped.
#[must_use = "the rule is removed when the guard drops"]
pub struct RuleGuard {
    id: u64,
    state: Arc<Mutex<State>>,
}

impl Drop for RuleGuard {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap()
            .rules
            .retain(|(id, _)| *id != self.id);
    }
}

/// A listener with a backlog for a fleet: std's is 128, and 200 devices
/// dialling at once overflowed it (the kernel drops a SYN past the backlog,
/// and the device's connect waits a second to send it again).
fn listen(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    let local = listener.local_addr()?;
    Ok((listener, local))
}

fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

impl FaultProxy {
    /// Listens on a free port of `ip` and forwards to `upstream`.
    pub fn start(
        ip: IpAddr,
        upstream: SocketAddr,
        transcript: &Transcript,
    ) -> Result<FaultProxy, ProxyError> {
        let listener = listen(SocketAddr::new(ip, 0));
        let (listener, addr) = listener.map_err(|source| ProxyError { ip, source })?;
        let state = Arc::new(Mutex::new(State::default()));
        let log = WireLog::new(transcript);
        let holds = Arc::new(Condvar::new());
        let (st, lg, cv) = (state.clone(), log.clone(), holds.clone());
        // The accept loop only accepts, stamps and numbers: the dial to the
        // broker runs on the connection's own thread, so a herd of devices
        // is timed as it dialled, not as one broker connect after another
        // (a broker whose backlog is full makes a connect wait a second for
        // SYN's retransmission, and it held every later device back by that
        // second when the loop dialled).
        std::thread::spawn(move || {
            for dev in listener.incoming() {
                let Ok(dev) = dev else { continue };
                let at = Instant::now();
                let (conn, refuse) = {
                    let mut s = st.lock().unwrap();
                    s.next_conn += 1;
                    (s.next_conn, s.refuse)
                };
                let (st, lg, cv) = (st.clone(), lg.clone(), cv.clone());
                std::thread::spawn(move || {
                    let peer = dev.peer_addr().ok().map(|a| a.ip());
                    let up = if refuse {
                        None
                    } else {
                        TcpStream::connect_timeout(&upstream, Duration::from_secs(2)).ok()
                    };
                    lg.push_at(
                        at,
                        WireEvent::Attempt {
                            conn,
                            reached_broker: up.is_some(),
                            peer,
                        },
                    );
                    let Some(up) = up else {
                        reset(&dev);
                        return;
                    };
                    let _ = dev.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = (
                        dev.try_clone(),
                        up.try_clone(),
                        dev.try_clone(),
                        up.try_clone(),
                    ) else {
                        return;
                    };
                    st.lock().unwrap().conns.push((conn, d2, u2));
                    let (dec_up, dec_down) = Decoder::pair();
                    let pump = Pump {
                        conn,
                        st,
                        log: lg,
                        holds: cv,
                    };
                    pump.clone().spawn(d3, u3, dec_up);
                    pump.spawn(up, dev, dec_down);
                });
            }
        });
        Ok(FaultProxy {
            addr,
            state,
            holds,
            log,
        })
    }

    /// Where the device connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every live connection, both sides.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        for (conn, d, u) in st.conns.drain(..) {
            self.log.push(WireEvent::Cut { conn });
            reset(&d);
            reset(&u);
        }
        st.held.clear();
    }

    /// The broker ends every live connection: sends `packet` to the device
    /// first (an MQTT 5 DISCONNECT with a reason code; None on 3.1.1, where
    /// a server can only close the socket), then closes the device's side
    /// gracefully (FIN) and drops the broker's. On the record as the
    /// broker's packet and the broker's close.
    pub fn server_close(&self, disconnect: Option<(u8, Option<&str>)>) {
        use mqtt_protocol_core::mqtt::packet::GenericPacketTrait;
        let bytes = disconnect.and_then(|(reason, reference)| {
            hil_packets::build::server_disconnect(reason, reference)
                .ok()
                .map(|p| (reason, p.to_continuous_buffer()))
        });
        let mut st = self.state.lock().unwrap();
        for (conn, d, u) in st.conns.drain(..) {
            if let Some((reason, bytes)) = &bytes {
                let mut w = &d;
                if w.write_all(bytes).and_then(|_| w.flush()).is_ok() {
                    self.log.push(WireEvent::Packet {
                        conn,
                        dir: Dir::Down,
                        packet: hil_packets::tap::Packet::Disconnect {
                            reason: Some(*reason),
                        },
                    });
                }
            }
            let _ = d.shutdown(Shutdown::Write);
            self.log.push(WireEvent::Closed {
                conn,
                by: Dir::Down,
            });
            reset(&u);
        }
        st.held.clear();
    }

    /// Drops all bytes both ways while on; connections stay open.
    pub fn blackhole(&self, on: bool) {
        let mut st = self.state.lock().unwrap();
        st.blackhole = on;
        // On the record: while it is on, a close reaches neither end.
        self.log.push(WireEvent::Blackhole { on });
        if !on {
            // Connections that lived through the blackhole are dead to both
            // ends by now; new ones pass.
            for (conn, d, u) in st.conns.drain(..) {
                self.log.push(WireEvent::Cut { conn });
                reset(&d);
                reset(&u);
            }
        }
    }

    /// While on, every new connection is reset at once (as if the broker were down).
    pub fn refuse(&self, on: bool) {
        self.state.lock().unwrap().refuse = on;
    }

    /// Delays every forwarded packet by `d` (each direction).
    pub fn latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// Installs a packet rule until the guard drops.
    pub fn install(&self, rule: impl Rule + 'static) -> RuleGuard {
        let mut st = self.state.lock().unwrap();
        st.next_rule += 1;
        let id = st.next_rule;
        st.rules.push((id, Box::new(rule)));
        RuleGuard {
            id,
            state: self.state.clone(),
        }
    }

    /// Waits until a rule has held a connection; false at the deadline.
    pub fn wait_held(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock().unwrap();
        while st.held.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.holds.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    /// Resets only the held connections: the other devices on this proxy
    /// keep their link.
    pub fn cut_held(&self) {
        let mut st = self.state.lock().unwrap();
        let held = std::mem::take(&mut st.held);
        st.conns.retain(|(conn, d, u)| {
            if held.contains(conn) {
                self.log.push(WireEvent::Cut { conn: *conn });
                reset(d);
                reset(u);
                false
            } else {
                true
            }
        });
    }

    /// What the tap has seen so far.
    pub fn wire(&self) -> &WireLog {
        &self.log
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// One direction of one connection: read, frame, ask the rules, forward.
#[derive(Clone)]
struct Pump {
    conn: u32,
    st: Arc<Mutex<State>>,
    log: WireLog,
    holds: Arc<Condvar>,
}

impl Pump {
    fn spawn(self, from: TcpStream, to: TcpStream, dec: Decoder) {
        std::thread::spawn(move || self.run(from, to, dec));
    }

    fn run(self, mut from: TcpStream, mut to: TcpStream, mut dec: Decoder) {
        let conn = self.conn;
        let dir = dec.dir();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // A connection the proxy cut is no longer listed: only a
                    // close by one of the two ends is evidence of anything.
                    if self
                        .st
                        .lock()
                        .unwrap()
                        .conns
                        .iter()
                        .any(|(c, ..)| *c == conn)
                    {
                        self.log.push(WireEvent::Closed { conn, by: dir });
                    }
                    // In a blackhole the far end hears nothing, not even the close.
                    if !self.st.lock().unwrap().blackhole {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => n,
            };
            let (blackhole, latency) = {
                let s = self.st.lock().unwrap();
                (s.blackhole, s.latency)
            };
            if blackhole {
                continue;
            }
            for frame in dec.feed(&buf[..n]) {
                let action = {
                    let mut s = self.st.lock().unwrap();
                    if s.ever_held.contains(&(conn, dir)) {
                        Action::Hold
                    } else {
                        let mut action = Action::Pass;
                        for (_, rule) in s.rules.iter_mut() {
                            let a = rule.on_packet(conn, dir, &frame);
                            if a != Action::Pass {
                                action = a;
                                break;
                            }
                        }
                        if action == Action::Hold {
                            s.ever_held.push((conn, dir));
                            s.held.push(conn);
                            self.log.note(format!(
                                "#{conn} held: this {} and all after it are held back",
                                frame.packet.kind()
                            ));
                            self.holds.notify_all();
                        }
                        action
                    }
                };
                // The tap stands at the device: what the device sent (Up,
                // before any rule), what it was given (Down, as rewritten).
                // So a rule on either side plays a broker that misbehaves.
                let frames = match &action {
                    Action::Replace(f) if dir == Dir::Down => vec![f.clone()],
                    Action::Then(fs) => fs.clone(),
                    _ => vec![frame.clone()],
                };
                for f in &frames {
                    if matches!(action, Action::Drop | Action::Hold) && dir == Dir::Down {
                        break;
                    }
                    self.log.push(WireEvent::Packet {
                        conn,
                        dir,
                        packet: f.packet.clone(),
                    });
                }
                if matches!(action, Action::Drop | Action::Hold) && dir == Dir::Down {
                    self.log.note(format!(
                        "#{conn} {} withheld from the device",
                        frame.packet.kind()
                    ));
                }
                let frame = match &action {
                    Action::Replace(f) => f.clone(),
                    _ => frame,
                };
                if !latency.is_zero() {
                    // The latency fault itself: this packet is late by design.
                    std::thread::sleep(latency);
                }
                let cut = action == Action::CutAfter;
                let bytes = match action {
                    Action::Pass | Action::CutAfter | Action::Replace(_) => frame.bytes,
                    Action::Then(fs) => fs.into_iter().flat_map(|f| f.bytes).collect(),
                    Action::Delay(d) => {
                        // The delay rule itself: late by design.
                        std::thread::sleep(d);
                        frame.bytes
                    }
                    Action::Drop | Action::Hold => continue,
                };
                if to.write_all(&bytes).is_err() {
                    return;
                }
                self.log.count_bytes(dir, bytes.len());
                if cut {
                    self.st.lock().unwrap().conns.retain(|(c, ..)| *c != conn);
                    self.log.push(WireEvent::Cut { conn });
                    self.log
                        .note(format!("#{conn} link cut after a marked packet"));
                    reset(&to);
                    reset(&from);
                    return;
                }
            }
        }
    }
}
